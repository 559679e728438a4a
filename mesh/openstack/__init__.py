"""The OpenStack side of HdPBF: nova-compute's get_vnc_console RPC server that records
its answers through consensus, and nova-api's two-step reader (Kim and Park 2020, Figs. 8 and 9;
docs/nova.md).

- ``ComputeService`` (compute.py): oslo.messaging RPC server, topic ``compute``.
- ``ConsoleRecorder`` (recorder.py): step 5a, idempotent retries, invalidation.
- ``ConsoleReader`` (reader.py): step 1 (local ledger, or its own recent step-2 answer
  while the ledger does not have it yet: ``STEP_OWN``) then step 2 (RPC).
- ``Sealer`` / ``Opener`` (sealing.py): console tokens sealed per API reader.
"""
from .compute import ComputeService, ConsoleTypeInvalid
from .reader import STEP_OWN, ComputeRefused, ConsoleReader, ConsoleUnavailable
from .recorder import ConsoleRecorder
from .sealing import Opener, Sealer, SealError, instance_key, open_console, seal_console

__all__ = ["instance_key", "ComputeService", "ConsoleRecorder", "ConsoleReader",
           "ConsoleUnavailable", "ComputeRefused", "ConsoleTypeInvalid", "STEP_OWN", "Sealer", "Opener", "SealError",
           "seal_console", "open_console"]
