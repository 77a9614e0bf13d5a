"""editforge.training"""
