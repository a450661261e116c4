"""What runs a trained model: chat, evaluation scores, export, the server, the preview and the tiny test model."""
