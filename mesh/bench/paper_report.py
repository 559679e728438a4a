"""What ``hdpbf bench paper`` measured: the freshness check, the summary, table and plot.

Owns: turning the per-call records of a run into the JSON result (per configuration
``mean_ms``, ``p50_ms``, ``p99_ms``, ``total_s``, ``step1``, ``own_answers``, ``step2``;
for those that read a ledger, ``ledger_first_answer_p50_ms``: how long after an
instance's first call the ledger first answered it, p50 -- how soon another API host
stops paying an RPC -- also gathered at the top level), the rich table, the report lines and the PNG (the paper's Figs. 12-14 on one set of
axes, plus the means as bars).

Rules of this file:
- ``step`` of a call is 1 (answered from the local ledger, or for ``redis`` from the
  cache), ``"1o"`` (``STEP_OWN``: the API node's own step-2 answer not yet in the
  ledger) or 2 (RPC to compute).  An own answer is never counted in ``step1``.
- Freshness, on every answer of every configuration, own answers included: an answer
  is *stale* when it equals no ``connect_info`` compute served for that instance before
  the answer and whose token was still alive when the answer came back;
  ``stale_answers`` (both hdpbf configurations) must be 0.  An answer equal to a live
  token that is not the newest one is counted apart (``older_token``): nova honours
  every token until it expires.
- Figures, never assertions (the tests assert).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from .stats import percentile
from .paper_rig import TWO_STEP
from .workload import first_calls, paper_sequence

STEP_OWN = "1o"          # mesh.openstack.reader.STEP_OWN (not imported: no oslo here)
COLORS = {"rpc": "#d62728", "redis": "#1f77b4", "hdpbf": "#2ca02c", "hdpbf-ledger": "#ff7f0e",
          "nova-rpc": "#8c564b", "nova-hdpbf": "#9467bd"}
CHECKED = TWO_STEP + ("nova-hdpbf",)  # answers from a ledger or an own answer


@dataclass
class CallRecord:
    config: str
    repeat: int
    call: int           # 1..100
    instance: int       # 1..6 (the paper's numbering)
    ms: float
    step: int | str     # 1: ledger (or cache), "1o": own answer, 2: RPC to compute
    instance_id: str = ""
    t_start: float = 0.0
    t_end: float = 0.0  # wall clock (time.time) when the answer came back
    answer: Any = None

    def public(self) -> dict:
        return {"config": self.config, "repeat": self.repeat, "call": self.call,
                "instance": self.instance, "ms": round(self.ms, 4), "step": self.step}


def check_answers(records: list[CallRecord], served: list[dict]) -> dict[str, dict[str, int]]:
    """Per configuration: answers equal to no live token served before them (``stale``,
    of which own answers: ``stale_own``), and answers equal to a live token that was not
    the newest (``older_token``)."""
    by_instance: dict[str, list[dict]] = {}
    for s in served:
        by_instance.setdefault(s["instance"], []).append(s)
    for lst in by_instance.values():
        lst.sort(key=lambda s: s["time"])
    out: dict[str, dict[str, int]] = {}
    for rec in records:
        counts = out.setdefault(rec.config, {"stale": 0, "stale_own": 0, "older_token": 0})
        live = [s for s in by_instance.get(rec.instance_id, [])
                if s["time"] <= rec.t_end and s["expires_at"] > rec.t_end]
        if not any(s["connect_info"] == rec.answer for s in live):
            counts["stale"] += 1
            counts["stale_own"] += rec.step == STEP_OWN
        elif live[-1]["connect_info"] != rec.answer:
            counts["older_token"] += 1
    return out


def _p50_us(values_ms: list[float]) -> float | None:
    return round(percentile(values_ms, 50) * 1000, 1) if values_ms else None


def _first_ledger_answer_ms(records: list[CallRecord]) -> dict:
    """How long after an instance's first call the ledger first answered it (step 1): an
    upper bound of the time until its record was committed on the API node."""
    slots: dict[tuple[int, int], list[float]] = {}
    for r in records:
        slot = slots.setdefault((r.repeat, r.instance), [])
        if not slot:
            slot.append(r.t_start)
        elif len(slot) == 1 and r.step == 1:
            slot.append(r.t_start)
    lags = sorted((v[1] - v[0]) * 1000 for v in slots.values() if len(v) == 2)
    return {"p50": round(percentile(lags, 50), 2) if lags else None,
            "max": round(lags[-1], 2) if lags else None, "never": len(slots) - len(lags)}


def summarize(records: list[CallRecord], served: list[dict], configs: list[str],
              seq: list[tuple[int, int]]) -> dict:
    checks = check_answers(records, served)
    firsts = set(first_calls(seq).values())
    per: dict[str, dict] = {}
    for c in configs:
        recs = [r for r in records if r.config == c]
        ms = [r.ms for r in recs]
        repeats = sorted({r.repeat for r in recs})
        check = checks.get(c, {})
        per[c] = {
            "mean_ms": round(sum(ms) / len(ms), 4),
            "p50_ms": round(percentile(ms, 50), 4),
            "p99_ms": round(percentile(ms, 99), 4),
            "total_s": round(sum(ms) / 1000 / len(repeats), 4),   # per 100-call run
            "step1": sum(r.step == 1 for r in recs),
            "own_answers": sum(r.step == STEP_OWN for r in recs),
            "step2": sum(r.step == 2 for r in recs),
            "calls": len(recs),
            # whole calls as the bench timed them, per answering step
            "step1_call_p50_us": _p50_us([r.ms for r in recs if r.step == 1]),
            "own_call_p50_us": _p50_us([r.ms for r in recs if r.step == STEP_OWN]),
            "stale": check.get("stale", 0),
            "stale_own": check.get("stale_own", 0),
            "older_token": check.get("older_token", 0),
        }
        if c in CHECKED:
            per[c]["step2_at_first_calls"] = sum(1 for r in recs if r.step == 2
                                                 and r.call - 1 in firsts)
            per[c]["first_ledger_answer_after_ms"] = _first_ledger_answer_ms(recs)
            # the headline figure: how soon every other API host can answer from its ledger
            per[c]["ledger_first_answer_p50_ms"] = per[c]["first_ledger_answer_after_ms"]["p50"]
    base = per["rpc"]["mean_ms"] if "rpc" in per else None   # --only without rpc: None
    for c in configs:
        per[c]["reduction_vs_rpc_pct"] = (round((1 - per[c]["mean_ms"] / base) * 100, 2)
                                          if base else None)
    two = [per[c] for c in CHECKED if c in per]
    return {
        "configs": per,
        "stale_answers": sum(p["stale"] for p in two),
        "stale_own_answers": sum(p["stale_own"] for p in two),
        "older_token_answers": sum(p["older_token"] for p in two),
        "hdpbf_step2_at_first_calls": per.get("hdpbf", {}).get("step2_at_first_calls", 0),
        "ledger_first_answer_p50_ms": {c: per[c]["ledger_first_answer_p50_ms"]
                                       for c in CHECKED if c in per},
        "served": len(served),
        "calls": [r.public() for r in records],
    }


def median_series(calls: list[dict], config: str) -> list[float]:
    """Per call number 1..100, the median over repetitions of that call's time."""
    by_call: dict[int, list[float]] = {}
    for c in calls:
        if c["config"] == config:
            by_call.setdefault(c["call"], []).append(c["ms"])
    return [sorted(v)[len(v) // 2] if len(v) % 2 else
            (sorted(v)[len(v) // 2 - 1] + sorted(v)[len(v) // 2]) / 2
            for _, v in sorted(by_call.items())]


# -- output ----------------------------------------------------------------------------------

def plot(result: dict, path: str) -> None:
    """Figs. 12-14 of the paper on one set of axes, plus the means as bars."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = list(result["configs"])
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(3, 1))
    series = {c: median_series(result["calls"], c) for c in configs}
    lo = min(min(s) for s in series.values())
    hi = max(max(s) for s in series.values())
    for c in configs:
        s = series[c]
        ax.plot(range(1, len(s) + 1), s, marker="o", markersize=3, linewidth=1,
                color=COLORS.get(c), label=f"{c} (mean {result['configs'][c]['mean_ms']:.3f} ms)")
    if lo > 0 and hi / lo > 20:
        ax.set_yscale("log")
    pos = 0
    for phase, calls in enumerate((6, 10, 15, 20, 25, 24), start=1):
        if pos:
            ax.axvline(pos + 0.5, color="0.85", linewidth=0.8, zorder=0)
        ax.text(pos + calls / 2 + 0.5, 1.01, f"phase {phase}", transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize=8, color="0.4")
        pos += calls
    for p in sorted(first_calls(paper_sequence()).values()):
        ax.axvline(p + 1, color="0.6", linewidth=0.6, linestyle=":", zorder=0)
    how = "median over %d repeats" % result["repeat"] if result["repeat"] > 1 else "one run"
    ax.set_xlabel("call (dotted: an instance's first call)")
    ax.set_ylabel("response time, ms" + (" (log)" if ax.get_yscale() == "log" else ""))
    ax.set_xlim(0.5, 100.5)
    ax.set_title(f"get_vnc_console response time per call ({how})", pad=16)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=len(configs), fontsize=9,
              frameon=False)
    ax.grid(True, which="major", axis="y", alpha=0.3)
    means = [result["configs"][c]["mean_ms"] for c in configs]
    bars = bx.bar(configs, means, color=[COLORS.get(c) for c in configs])
    for b, c in zip(bars, configs):
        red = result["configs"][c]["reduction_vs_rpc_pct"]
        txt = f"{b.get_height():.3g} ms" + ("" if c == "rpc" or red is None
                                            else f"\n{red:.1f}% less" if red >= 0
                                            else f"\n{-red:.1f}% more")
        bx.annotate(txt, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center",
                    va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    bx.tick_params(axis="x", labelrotation=20, labelsize=8)
    bx.set_ylabel("mean response time, ms")
    bx.set_title(f"mean of {result['repeat']} x 100 calls", pad=16)
    bx.set_ylim(0, max(means) * 1.25)
    mode = "EMBEDDED (no broker)" if result["mode"] == "embedded" else "real RabbitMQ"
    fig.suptitle(f"Paper experiment: 100 get_vnc_console calls, {mode}, "
                 f"service {result['service_ms']:g} ms", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(result: dict) -> Any:
    from rich import box
    from rich.table import Table
    mode = ("EMBEDDED (no broker)" if result["mode"] == "embedded" else "real RabbitMQ")
    t = Table(title=f"{mode}: paper experiment, {result['repeat']} x 100 get_vnc_console calls "
                    f"per configuration, service {result['service_ms']:g} ms",
              box=box.SIMPLE_HEAD, pad_edge=False,
              caption="total: per 100-call run; step 1: answered locally (ledger, or for "
                      "redis the cache); own: the API node's own step-2 answer before the "
                      "ledger had it; step 2: RPC to compute; counts over all repeats")
    for col in ("config", "mean\nms", "p50\nms", "p99\nms", "total\ns", "vs\nrpc", "step\n1",
                "own", "step\n2"):
        t.add_column(col, justify="left" if col == "config" else "right", no_wrap=True)
    for c, r in result["configs"].items():
        t.add_row(c, f"{r['mean_ms']:.3f}", f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}",
                  f"{r['total_s']:.3f}", "-" if c == "rpc" or r["reduction_vs_rpc_pct"] is None
                  else f"{-r['reduction_vs_rpc_pct']:+.1f} %",
                  str(r["step1"]), str(r["own_answers"]) if c in CHECKED else "-",
                  str(r["step2"]))
    return t


def report_skipped(result: dict, console: Any) -> None:
    """Each configuration that did not run and why; a reason is text, not rich markup (it
    names pip extras such as '.[test]')."""
    for name, why in result.get("skipped", {}).items():
        console.print(f"[yellow]{name} configuration skipped: {escape(str(why))}[/yellow]")


def report(result: dict, console: Any) -> None:
    console.print(table(result))
    console.print(f"rig: {result['label']}; compute services as {result['compute']}")
    report_skipped(result, console)
    s1, rg = result.get("step1_p50_us"), result.get("redis_get_p50_us")
    if s1 is not None:  # None: hdpbf did not run (--only)
        line = f"step-1 read alone (ConsoleReader.step1) p50 {s1} us"
        if rg is not None and s1:
            line += f"; Redis GET of the same value p50 {rg} us ({rg / s1:.1f}x the step-1 read)"
        console.print(line)
    if result.get("driver_step1_p50_us") is not None:
        console.print(f"a whole step-1 call through the hdpbf driver (HdpbfDriver.send: key from "
                      f"the Instance primitive, ledger read, open) p50 "
                      f"{result['driver_step1_p50_us']} us, p99 {result['driver_step1_p99_us']} us")
    nr, nh = result["configs"].get("nova-rpc"), result["configs"].get("nova-hdpbf")
    if nr and nh:
        console.print(f"nova's own ComputeAPI client: nova-hdpbf mean {nh['mean_ms']:.3f} ms = "
                      f"{100 * nh['mean_ms'] / nr['mean_ms']:.1f} % of nova-rpc's "
                      f"{nr['mean_ms']:.3f} ms")
    floor = result.get("nova_client_floor_ms")
    if floor is not None and nr:
        console.print(f"nova's client-side floor (ComputeAPI.get_vnc_console on a driver that "
                      f"answers at once: serializer, Instance and context to primitives, oslo's "
                      f"client) {floor:.3f} ms = "
                      f"{result['nova_client_floor_vs_nova_rpc_pct']:.1f} % of nova-rpc; of which "
                      f"nova's serializer alone {result['nova_serialize_ms']:.3f} ms; with this "
                      f"floor under every step-1 call, nova-hdpbf cannot go below "
                      f"{result['nova_hdpbf_best_pct']:.1f} % of nova-rpc")
    counted = {c: r for c, r in result["configs"].items() if r.get("broker_messages")}
    if counted:
        console.print("messages RabbitMQ routed (its own per-queue counters; RPC + consensus):")
        for c, r in counted.items():
            m, st = r["broker_messages"], r.get("broker_messages_per_1000_steady") or {}
            mean = r.get("steady_mean_ms")
            console.print(f"  {c:>12}: per 100 calls {m['total']:g} (RPC {m['rpc']:g}, consensus "
                          f"{m['consensus']:g}); per 1,000 steady-state reads "
                          f"{st.get('total', float('nan')):g} (RPC {st.get('rpc', 0):g}, "
                          f"consensus {st.get('consensus', 0):g})"
                          + (f"; steady-state call mean {mean:.3f} ms" if mean is not None else ""))
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning: {warning}[/yellow]")
    for figure, why in result.get("missing", {}).items():
        console.print(f"[yellow]missing: {figure} ({why})[/yellow]")
    colour = "green" if result["stale_answers"] == 0 else "red"
    own = sum(result["configs"][c]["own_answers"] for c in CHECKED if c in result["configs"])
    console.print(f"[{colour}]stale_answers = {result['stale_answers']}[/{colour}] (hdpbf, "
                  f"hdpbf-ledger and nova-hdpbf answers matching no live token compute served; "
                  f"{result['stale_own_answers']} of them among the {own} own answers); "
                  f"older-but-live tokens: {result['older_token_answers']}")
    for c in CHECKED:
        r = result["configs"].get(c)
        if r is None:
            continue
        lag = r["first_ledger_answer_after_ms"]
        line = (f"{c}: step 2 at first calls {r['step2_at_first_calls']} of "
                f"{6 * result['repeat']}; call p50 by step: ledger {r['step1_call_p50_us']} us"
                + (f", own answer {r['own_call_p50_us']} us" if r["own_answers"] else ""))
        if lag["p50"] is not None:
            line += (f"; the ledger first answered an instance {lag['p50']} ms (p50, "
                     f"ledger_first_answer_p50_ms; max {lag['max']} ms) after its first call "
                     f"(consensus committing)")
        console.print(line)
