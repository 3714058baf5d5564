"""The one base of every error a user can cause and fix: bad params, bad data, a missing model,
version or site, a refused file. Its message names the file or param and what is wrong with it,
so the `melanoma` command (melanoma.cli) and the stages (melanoma.logs.exit_on) show it as one
message and an exit code, never as a traceback; any other exception is a bug and keeps its
traceback."""

from melanoma.exit_codes import CANNOT_RUN


class MelanomaError(Exception):
    """An error of the user's; the `melanoma` command exits with `exit_code`."""

    exit_code = CANNOT_RUN
