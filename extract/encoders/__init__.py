"""extract/encoders"""
