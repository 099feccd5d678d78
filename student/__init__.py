"""The dual-stream ViT student, its losses, distillation loop and metrics."""
