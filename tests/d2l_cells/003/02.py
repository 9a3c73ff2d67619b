blk = Residual(3,6, use_1x1conv=True, strides=2)
X = torch.rand(4,3,8,8)
Y = blk(X)  # 调用了 Residual 类实例 blk 的 forward 方法
Y.shape
blk(X).shape
