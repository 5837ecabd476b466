"""Built-in plugins. Each registers under the entry-point group `openprepay.plugins` and uses
only the hooks of `openprepay.core.hookspecs`, exactly like a third-party package."""
