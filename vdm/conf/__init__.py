"""The Hydra configs, a package so that Hydra finds them as ``pkg://vdm.conf`` wherever vdm is
installed (``conf/`` at the repository root links here), and the resolvers they use
(:mod:`vdm.conf.resolvers`, registered when ``vdm`` is imported)."""
