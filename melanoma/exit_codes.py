"""Exit codes of the `melanoma` command, shared by its subcommands, and of the stages."""

OK, SOME_FILES_FAILED, CANNOT_RUN = 0, 1, 2
# A pipeline stage stopped by a user error (melanoma.logs.exit_on): DVC tells only 0 from others.
STAGE_STOPPED = 1

EXIT_CODES = f"""exit codes:
  {OK}  every image was predicted / the action was done
  {SOME_FILES_FAILED}  at least one file could not be used (the others were still predicted)
  {CANNOT_RUN}  nothing was done: bad arguments or params, model or registry unavailable
"""
