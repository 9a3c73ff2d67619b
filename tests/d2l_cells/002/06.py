b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
# 用Sequential把多个block串起来，作为一个stage
b3 = nn.Sequential(*resnet_block(64, 128, 2))
b4 = nn.Sequential(*resnet_block(128, 256, 2))
b5 = nn.Sequential(*resnet_block(256, 512, 2))
