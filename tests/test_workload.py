"""The workload generator reproduces the paper's 100-call order exactly (Kim and Park 2020)."""
from collections import Counter

from mesh.bench.workload import INSTANCES, ROUNDS, first_calls, paper_sequence


def test_exactly_100_calls_over_six_instances():
    seq = paper_sequence()
    assert len(seq) == 100
    assert {i for _, i in seq} == set(range(1, INSTANCES + 1))
    assert {p for p, _ in seq} == set(range(1, 7))


def test_calls_per_phase_are_6_10_15_20_25_24():
    per_phase = Counter(p for p, _ in paper_sequence())
    assert [per_phase[p] for p in range(1, 7)] == [6, 10, 15, 20, 25, 24]
    assert ROUNDS == (6, 5, 5, 5, 5, 4)


def test_phases_run_in_order_and_each_round_calls_1_to_k():
    seq = paper_sequence()
    assert [p for p, _ in seq] == sorted(p for p, _ in seq)
    pos = 0
    for phase, rounds in zip(range(1, 7), ROUNDS):
        for _ in range(rounds):
            assert seq[pos:pos + phase] == [(phase, i) for i in range(1, phase + 1)]
            pos += phase
    assert pos == 100


def test_the_first_calls_written_out():
    instances = [i for _, i in paper_sequence()]
    assert instances[:6] == [1] * 6
    assert instances[6:16] == [1, 2] * 5
    assert instances[16:31] == [1, 2, 3] * 5
    assert instances[-6:] == [1, 2, 3, 4, 5, 6]


def test_each_instance_is_first_called_at_the_start_of_its_phase():
    # Phase k starts after 6+10+...; its first round introduces instance k.
    assert first_calls(paper_sequence()) == {1: 0, 2: 7, 3: 18, 4: 34, 5: 55, 6: 81}


def test_six_step2_candidates_and_94_step1_candidates():
    seq = paper_sequence()
    firsts = set(first_calls(seq).values())
    assert len(firsts) == 6
    assert len([pos for pos in range(len(seq)) if pos not in firsts]) == 94


def test_calls_per_instance():
    per_instance = Counter(i for _, i in paper_sequence())
    # instance k takes part in phases k..6
    expected = {k: sum(ROUNDS[p - 1] for p in range(k, 7)) for k in range(1, 7)}
    assert per_instance == expected == {1: 30, 2: 24, 3: 19, 4: 14, 5: 9, 6: 4}
