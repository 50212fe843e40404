"""``ober bootstrap`` and ``ober uninstall``: make a machine an ober node, and undo exactly that.

Facts → plan → actions, like pyinfra's operations:

- *facts* (:mod:`ober.bootstrap.facts`: :class:`HostFacts`, :class:`InstallFacts`; :class:`UninstallFacts`) are
  read from the machine: a few files, and small commands run through a :class:`~ober.runner.Runner` whose output
  small parsers read;
- *plans* (:func:`plan_bootstrap` in :mod:`ober.bootstrap.plan`, :func:`plan_uninstall` in
  :mod:`ober.bootstrap.uninstall`, both pure) compare the facts with what is wanted and return :class:`Step` s,
  each holding the actions that close the difference, or none and the reason why nothing needs doing;
- :func:`run_steps` (:mod:`ober.bootstrap.steps`) carries the actions out and keeps the *ledger*
  (:mod:`ober.bootstrap.ledger`): every change bootstrap makes, so uninstall undoes exactly those and nothing else,
  also after a run that failed midway.
"""

from ober.bootstrap.facts import (
    DISTRO_HAPROXY_UNIT,
    HAPROXY,
    UNITS,
    Facts,
    HostFacts,
    InstallFacts,
    UnitState,
    find_aws_lc_repo,
    gather_host_facts,
    gather_install_facts,
    installed_packages,
    parse_apt_candidate,
    parse_getsebool,
    parse_haproxy_ssl,
    parse_unit_state,
    read_unit,
    venv_packages,
    wanted_dirs,
)
from ober.bootstrap.ledger import Entry, Ledger, ledger_path
from ober.bootstrap.plan import (
    EXABGP_VERSION,
    BootstrapOptions,
    check_host,
    check_install_path,
    default_install_path,
    next_hint,
    plan_bootstrap,
)
from ober.bootstrap.steps import (
    Action,
    InstallPackages,
    RemoveLedger,
    Reporter,
    Run,
    Step,
    StepResult,
    StopUnits,
    run_steps,
)
from ober.bootstrap.uninstall import UninstallFacts, gather_uninstall_facts, plan_uninstall, uninstall_changes

__all__ = [
    "DISTRO_HAPROXY_UNIT",
    "EXABGP_VERSION",
    "HAPROXY",
    "UNITS",
    "Action",
    "BootstrapOptions",
    "Entry",
    "Facts",
    "HostFacts",
    "InstallFacts",
    "InstallPackages",
    "Ledger",
    "RemoveLedger",
    "Reporter",
    "Run",
    "Step",
    "StepResult",
    "StopUnits",
    "UninstallFacts",
    "UnitState",
    "check_host",
    "check_install_path",
    "default_install_path",
    "find_aws_lc_repo",
    "gather_host_facts",
    "gather_install_facts",
    "gather_uninstall_facts",
    "installed_packages",
    "ledger_path",
    "next_hint",
    "parse_apt_candidate",
    "parse_getsebool",
    "parse_haproxy_ssl",
    "parse_unit_state",
    "plan_bootstrap",
    "plan_uninstall",
    "read_unit",
    "run_steps",
    "uninstall_changes",
    "venv_packages",
    "wanted_dirs",
]
