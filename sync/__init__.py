"""phonevault.sync"""
