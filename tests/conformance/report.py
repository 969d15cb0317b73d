def write(outcomes, out):  # placeholder until the report module lands
    raise NotImplementedError
