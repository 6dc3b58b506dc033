"""The emulator's web console: the fleet, its shadows, an MQTT test client, telemetry charts
and emergencies, live in a browser (``ancsync emulator --console``).

- :mod:`~ancsync.emulator.console.service`: :class:`Console`, the Component that connects as the
  operator and serves the page;
- :mod:`~ancsync.emulator.console.fleet`: what the console knows, built from the messages;
- :mod:`~ancsync.emulator.console.web`: the page, its API and its event stream;
- ``static/``: the page's HTML, JavaScript and CSS, written by hand (no build step, no CDN).
"""
