"""The admin HTTP API: a Falcon WSGI app, served by gunicorn.

``create_app(settings)`` builds it; with no argument the settings come from
the environment (``MMGATE_CONFIG``, ``MMGATE_VAR_DIR``, ``MMGATE_API_TOKEN``),
so ``gunicorn 'mmgate.api:create_app()'`` works as it stands. It reads the
same configuration and store as the SMTP side, never the SMTP process's
memory: counters, the journal and pauses are in the store
(:mod:`mmgate.store`); lists and routes come from Mailman.
"""

from mmgate.api.app import ApiSettings, create_app

__all__ = ["ApiSettings", "create_app"]
