"""Compiled verification of credentials, dynamic QR codes and card taps."""
