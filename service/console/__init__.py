"""The web console: a static page at ``/`` (HTML, CSS and JavaScript shipped in the package,
no build step, nothing from a CDN) over the service's own API, and the offline API docs."""
