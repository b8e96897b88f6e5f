"""phonevault.cli"""
