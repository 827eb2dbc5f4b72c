"""Local stand-ins for HubSpot and Salesforce: the subset of each vendor's documented REST API
that Coxswain's connectors call (request and response shapes from the vendor's API reference),
kept in memory and served over real HTTP.

The tests point the real client code at them (``serving``), and ``make run`` starts them as
processes (``coxswain demo crm hubspot|salesforce``) so a new user sees owners and tasks written
by ``coxswain run crm-sync`` and the scripted reps' calls flowing back. They are no CRM: nothing
is persisted, and only what the connectors use is served. ``GET /demo/records`` (no token) lists
what they hold.
"""
