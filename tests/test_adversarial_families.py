

# ---- what transformers' Trainer trains -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["vae_gan", "aae"])
def test_transformers_trainer_trains_the_forward_loss_without_a_discriminator(name, tmp_path):
    """Without hf_vae's objective there is no discriminator: transformers' Trainer minimises `model(...).loss`,
    the VAE's negative ELBO (VAE-GAN) or the reconstruction term (AAE), and nothing else moves."""
    from transformers import Trainer, TrainingArguments

    model = (_vae_gan if name == "vae_gan" else _aae)()[0]
    images = binary_images(32, seed=2)
    dataset = [{"pixel_values": image} for image in images]
    with torch.no_grad():
        before = model(images, generator=torch.Generator().manual_seed(0)).loss
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=40,
                             learning_rate=3e-3, report_to=[], use_cpu=True, dataloader_num_workers=0,
                             disable_tqdm=True, save_strategy="no", logging_steps=10)
    Trainer(model=model, args=args, train_dataset=dataset).train()
    with torch.no_grad():
        after = model(images, generator=torch.Generator().manual_seed(0)).loss
    assert after < before
