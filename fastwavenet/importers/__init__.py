"""Importers for WaveNets trained by other implementations."""
