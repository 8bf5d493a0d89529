"""The commands (``vdm-train``, ``vdm-sample``, ``vdm-evaluate``): the only code that reads argv
and composes Hydra configs, checks a config before any work, turns a user's error into one line
and sets the exit status. Each command imports the library, never another command."""
