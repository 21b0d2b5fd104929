"""Where the templates and static files are: beside the packages in a checkout, and in the installed package."""

from pathlib import Path

# handlers/ and templates/ are siblings both in the repository and under tidings/ in site-packages.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = PACKAGE_ROOT / "templates"
STATIC_DIR = PACKAGE_ROOT / "static"
