"""The live web console at ``/dashboard``: a member's view of its cluster, and the
operator's and the scheduler's views on their HTTP ports.

- :mod:`datastore.console.web`: the page, its static files, the JSON snapshot and the
  server-sent-events stream (read-only: GET and HEAD only), shared by every listener;
- :mod:`datastore.console.member`: what a member shows (its peers through Status RPCs);
- ``static/``: plain HTML, JS and CSS, and the vendored uPlot chart library.
"""
