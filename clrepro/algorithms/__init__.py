"""CL algorithms: one file and one class each, on the hook interface of `base.CLAlgorithm`."""
