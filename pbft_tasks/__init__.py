"""PBFT consensus: the pure core (``pbft_tasks.core``) and its adapters.

``celery -A pbft_tasks worker -Q node.<id> ...`` finds the Celery app as
``pbft_tasks.app``; it is imported lazily so that the pure core and the tests that only
need it do not pull in Celery.
"""


def __getattr__(name: str):
    if name in ("app", "celery"):
        from .celery_app import app
        return app
    raise AttributeError(name)
