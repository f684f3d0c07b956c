"""The model layer: the one code path to a model (llm), the request on the wire and what its
failures mean (wire), the output modes an endpoint takes (output_modes), answers that stream
(streaming), prompts cut to the model's window (fitting), the roles' prompts (prompts), the
Code Writer's plain-text edit format (edit_blocks), kept answers (answers), the offline model
(offline), and the probe of an endpoint (probe). Nothing here runs generated code or touches a
repository."""
