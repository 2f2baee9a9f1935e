"""Megatron-LM integration: argument hooks and the scheduler, without editing the tree."""
