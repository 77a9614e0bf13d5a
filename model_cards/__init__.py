"""editforge.model_cards"""
