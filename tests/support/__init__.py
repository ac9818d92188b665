"""Shared test support: everything more than one test folder uses, and nothing else.

- ``servers``: an ASGI app on a real socket in the test's event loop.
- ``stacks/``: running setups (the llm over fake vendors, behind a gateway; the auth
  service's accounts; gateways over echoing stand-ins).
- ``fakes/``: stand-ins for what is outside this machine (LLM vendors speaking their exact
  wire formats, an auth service issuing tokens).
- ``faults/``: PostgreSQL and Redis made unreachable, hung or restarted under a service.
- ``workers``, ``job_events``, ``logs``, ``responses``: smaller helpers named for what they
  help with.

Fixtures stay in the ``conftest.py`` of the folder that uses them; test modules import helpers
from here, never from a conftest or from another test module.
"""
