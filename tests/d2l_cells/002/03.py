blk = Residual(3,6, use_1x1conv=True, strides=2)
blk(X).shape
