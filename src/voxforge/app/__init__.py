"""The browser app (`voxforge app`, the `app` extra: gradio): a tab per model family, a runs
tab, and every action a named HTTP endpoint.

- `registry`: families → tab builders (`Family`, `register_family`); built-in: image → 3D
  (`image_to_3d`), text → image (`text_to_image`), text / image → video (`text_to_video`),
  mesh GAN (`mesh_gan`). A new family adds a module with a `FAMILY` and a line in
  `registry._BUILTIN`.
- `requests`: what every request is checked against (parameter ranges, uploaded images by
  content and declared size) and the job folders results go to. No gradio.
- `ui`: the endpoint error boundary (`gr.Error`, never a traceback), sliders, the theme.
- `runs_tab`: training runs through `voxforge.train.monitor`.
- `server`: `AppConfig`, `build_app`, `serve` (127.0.0.1, one queue slot, writes only in OUT).

Only `registry` and `requests` import without gradio; `voxforge app` checks it is installed.
"""
