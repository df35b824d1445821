"""The language both sides speak: commands, outcomes and the messages that carry them.

`reasons` holds the outcome contract, `commands` what a relay applies, `messages` the versioned
wire format (signed requests with sealed secrets, outcomes, heartbeats). This package imports
nothing of ours except `writeback.errors`.
"""

from writeback.protocol.commands import (
    ChangePassword,
    Command,
    ExpirePassword,
    Initiator,
    Operation,
    ResetPassword,
    UnlockAccount,
)
from writeback.protocol.reasons import Outcome, Reason, Status

__all__ = [
    "ChangePassword",
    "Command",
    "ExpirePassword",
    "Initiator",
    "Operation",
    "Outcome",
    "Reason",
    "ResetPassword",
    "Status",
    "UnlockAccount",
]
