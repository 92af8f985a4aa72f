"""Around a model in use: Grad-CAM explanations, referral of uncertain images, drift against a reference (per-image
statistics, the reference of training images, the comparison)."""
