import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"',
                    (HERE / "muc_guard" / "__init__.py").read_text()).group(1)

setup(
    name="muc_guard",
    version=VERSION,
    description="Keep aioxmpp and slixmpp clients really inside their XEP-0045 MUC rooms: "
                "drop detection, self-ping, automatic rejoin, persistent state.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["muc_guard", "muc_guard.*"]),
    package_data={"muc_guard": ["py.typed"],
                  "muc_guard.testing": ["prosody_modules/*.lua"]},
    python_requires=">=3.11",
    install_requires=[
        # On Python 3.13 aioxmpp's lxml~=4.0 pin cannot build: see README,
        # "Installing on Python 3.13". Not required there, so that
        # muc_guard[slixmpp] installs cleanly on 3.11-3.13; `import muc_guard`
        # and muc_guard.slixmpp need no aioxmpp (muc_guard.MUCGuard does).
        'aioxmpp>=0.13,<0.14; python_version < "3.13"',
        "aiosqlite>=0.20",
        "pytz",            # imported by aioxmpp, not declared by it
        # muc_guard.tls: the certificate name check aioxmpp 0.13 can no longer do
        "service-identity>=24.1",
        "cryptography>=42",
        "pyOpenSSL>=23.2",
    ],
    entry_points={"console_scripts": ["muc-guard = muc_guard.cli:main"]},
    extras_require={
        # the slixmpp front-end (muc_guard.slixmpp, issue #14); 1.17 is the
        # release it was written and tested against
        "slixmpp": ["slixmpp>=1.17"],
        # muc_guard.metrics (issue #15): the collector needs prometheus_client
        # (custom collectors and choose_encoder as of 0.20), serve() aiohttp.web
        "metrics": ["prometheus_client>=0.20", "aiohttp>=3.9"],
        "test": [
            "pytest>=8",
            "pytest-asyncio>=1.0",
            "hypothesis>=6",
            # scripts/run-tests spreads the suite over workers: it mostly waits
            "pytest-xdist>=3.5",
            "trustme>=1.1",    # muc_guard.testing.certs: the tests' private CA
            "time-machine>=2.10",   # the bot's clock shifted against the server's
            # muc_guard.metrics and its tests (scrapes with aiohttp.ClientSession)
            "prometheus_client>=0.20",
            "aiohttp>=3.9",
            # scripts/run-tests lints and type checks (settings: pyproject.toml);
            # pinned, as a new release may bring new findings.
            "ruff==0.17.6",
            "mypy==2.4.1",
        ],
    },
    classifiers=[
        "Framework :: AsyncIO",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Communications :: Chat",
        "Typing :: Typed",
    ],
)
