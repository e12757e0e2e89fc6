"""The quality-vs-speed harness behind ``gna-diffusers compare`` and ``sweep``. It uses only the public
gna_diffusers API (apply / remove / presets) and the model-family modules' builders."""
