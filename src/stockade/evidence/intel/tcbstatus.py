"""Intel TCB statuses (Intel PCS API v4 "tcbStatus"; QVL
``TcbStatus``) and which of them each collateral level may carry: the leaf
both tcbinfo.py (parsing) and tcb.py (level selection) import, so neither
imports the other back.
"""

from __future__ import annotations

import enum


class TcbStatus(enum.Enum):
    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"
    # Computed by the TD relaunch check (TD report 1.5 only), never in TCB info:
    TD_RELAUNCH_ADVISED = "TDRelaunchAdvised"
    TD_RELAUNCH_ADVISED_CONFIGURATION_NEEDED = "TDRelaunchAdvisedConfigurationNeeded"


S = TcbStatus
PLATFORM_STATUSES = frozenset(
    {
        S.UP_TO_DATE,
        S.SW_HARDENING_NEEDED,
        S.CONFIGURATION_NEEDED,
        S.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        S.OUT_OF_DATE,
        S.OUT_OF_DATE_CONFIGURATION_NEEDED,
        S.REVOKED,
    }
)
MODULE_STATUSES = frozenset({S.UP_TO_DATE, S.OUT_OF_DATE, S.REVOKED})
ENCLAVE_STATUSES = frozenset({S.UP_TO_DATE, S.OUT_OF_DATE, S.REVOKED})


__all__ = ["ENCLAVE_STATUSES", "MODULE_STATUSES", "PLATFORM_STATUSES", "TcbStatus"]
