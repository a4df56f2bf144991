"""Optional integrations of hf_vae with other libraries.

    hf_vae.integrations.hub         push trained models to the Hugging Face Hub (one commit, model card, preview)
    hf_vae.integrations.model_card  the model card renderer used by the hub integration
    hf_vae.integrations.diffusers   KLAEModel / VQVAEModel inside diffusers pipelines (needs diffusers)

Nothing is imported here, so `import hf_vae` stays light: import the submodule you need.
"""
