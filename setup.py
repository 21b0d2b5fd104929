"""Packaging for tidings: accounts, JWT auth, live notifications and an admin panel on aiohttp."""

from pathlib import Path

from setuptools import setup

# Import packages, each a folder of the repository; templates/ and static/ ship as data-only packages.
PACKAGES = [
    "server",
    "server.services",
    "server.realtime",
    "server.adapters",
    "handlers",
    "handlers.admin",
    "documents",
    "templates",
    "static",
]

setup(
    name="tidings",
    version="0.1.0",
    description="Accounts, JWT auth, real-time notifications over WebSocket and an admin panel on aiohttp",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11,<3.14",
    # The folders stay at the top of the repository and install under one import name, `tidings`, so nothing but
    # tidings/ lands at the top of site-packages. `tidings` itself is a namespace package (it has no folder).
    packages=[f"tidings.{name}" for name in PACKAGES],
    package_dir={f"tidings.{name}": name.replace(".", "/") for name in PACKAGES},
    package_data={
        "tidings.server": ["py.typed"],
        "tidings.handlers": ["py.typed"],
        "tidings.documents": ["py.typed"],
        "tidings.templates": ["*.html", "**/*.html", "**/*.txt"],
        "tidings.static": ["*"],
    },
    include_package_data=False,
    install_requires=[
        "aiohttp>=3.14,<3.15",
        "aiohttp-jinja2>=1.6,<2",
        "aiohttp-apigami>=0.9,<0.10",
        "marshmallow>=3.20,<4",
        "beanie>=2.0,<3",
        "pymongo>=4.13,<5",
        "redis>=6.0,<9",
        "PyJWT>=2.10,<3",
        "argon2-cffi>=23.1,<26",
        "gunicorn>=23,<28",
        "uvloop>=0.21,<1",
        # Background jobs in Redis (docs/jobs.md) and SMTP (docs/email.md).
        "saq>=0.26,<0.27",
        "aiosmtplib>=5.1,<6",
        "Jinja2>=3.1,<4",
        # GET /metrics (docs/operations.md), multiprocess-aware under gunicorn.
        "prometheus-client>=0.22,<0.27",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "pytest-aiohttp>=1.1,<2",
            "pytest-asyncio>=1.0,<2",
            "playwright>=1.50,<2",
            # tests/test_fuzz.py: requests generated from the OpenAPI document (written against schemathesis 4.32).
            "schemathesis>=4.32,<5",
            "hypothesis>=6.130,<7",
            "requests>=2.22,<3",
            # A real SMTP server for the mail tests (tests/mail.py).
            "aiosmtpd>=1.4,<2",
            # tests/test_metrics.py reads the alert rules.
            "PyYAML>=6,<7",
        ],
        "dev": [
            "ruff>=0.8",
            "mypy>=1.13",
            "tox>=4",
            "import-linter>=2.1,<3",
            "types-PyYAML>=6",
        ],
    },
    entry_points={"console_scripts": ["tidings=tidings.server.cli:main"]},
)
