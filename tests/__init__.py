"""The test suite, a package: every test module is imported as ``tests.<folder>.<name>``
with the project root on ``sys.path``, so no test folder (tests/ledger, tests/openstack)
shadows a package of the same name, and the shared helpers are ``tests.meshkit``,
``tests.services`` and ``tests.processes``."""
