"""Scoring trained models: Fréchet video distance, PSNR / SSIM of prediction and interpolation
against real clips and model-free baselines, and the real clips they are scored on."""
