"""phonevault.store"""
