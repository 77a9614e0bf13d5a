"""editforge.pipelines"""
