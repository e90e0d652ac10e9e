"""The `voxforge` sub-commands: one module each, `register(subparsers)` plus a handler.

Commands are thin: they parse, build from the library and run. `voxforge.cli` imports every
command module to build the parser, so a command module imports torch-heavy parts of the
library (engine, pipelines, workflows) inside its handler, not at the top: `voxforge --help`
and `voxforge config` then start without loading torch.
"""
