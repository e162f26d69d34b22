"""`sabun ui`: a local web app (Gradio) over the library functions the CLI calls.

No pipeline logic lives here: a character run is `sabun character CONFIG.toml` in a subprocess owned
by the server, the LoRA tools call `sabun.lora.commands`, results are read from the files a run
writes. Modules:

- `safety`: what the server may touch (paths inside `--root`) and how it binds (`--auth` off localhost);
- `forms`: the character run's form, generated from the config dataclasses, and back to a config;
- `runs`: the run queue (one run at a time, in a subprocess) and watching a run from its folder;
- `tools`: the results and LoRA-tool pages' text, from the library's reports;
- `app`: the Gradio layout and `serve`.

This package imports Gradio only in `app`, so `sabun ui`'s option checks need no Gradio.
"""
