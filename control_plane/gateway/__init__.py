"""Gateway integration: the documented nginx configuration, rendered for a deployment."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from string import Template

__all__ = ["NGINX_TEMPLATE", "render_nginx_config"]

NGINX_TEMPLATE = "nginx.conf.template"


def render_nginx_config(*, prefix: Path, listen: str, control_plane: str, flag: str) -> str:
    """The shipped nginx example with its fields filled in (nginx's own $vars are kept)."""
    template = files(__package__).joinpath(NGINX_TEMPLATE).read_text(encoding="utf-8")
    return Template(template).safe_substitute(
        prefix=str(prefix), listen=listen, control_plane=control_plane, flag=flag)
