"""`planner report`: one self-contained HTML file from estimates, profiles, a recommendation and accuracy.

- ``palette``           one colour and label per memory category, shared by every figure
- ``figures``           pure plotly builders: estimate bars, phases, estimate vs measured, accuracy (no torch)
- ``timeline``          profile timelines: peak-keeping downsampling and the per-rank stacked-area panels
- ``estimate_section``, ``profile_section``, ``plan_section``, ``accuracy_section``: the report's parts
- ``profile_source``    a profile directory (``planner.profile.load_profile``) -> what the report draws
- ``build``             assembles the parts and the versions into a ``Report``
- ``html``              the document model and the offline HTML writer (plotly.js inlined once, text escaped)
- ``plotlyjs``          which plotly.js bundle to inline (the vendored basic bundle when it suffices)
"""
