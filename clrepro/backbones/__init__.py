"""Backbones (plain and HAT-masked MLP and ResNet-18), task heads and the shared HAT mask machinery."""
