"""Gradio views over serve and feedback; mounted by deploy."""
