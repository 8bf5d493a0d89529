"""The Hydra configs, a package so that Hydra finds them as ``pkg://vdm.conf`` wherever vdm is
installed. ``conf/`` at the repository root links here."""
