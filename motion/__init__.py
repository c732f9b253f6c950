"""signfeat motion: SMPL-X parameters (read or estimated from video) -> 623-d HumanML3D features and back.

- body_model.py  the user's SMPL-X model folder, batched joints of many frames/clips
- params_io.py   Input A: SignAvatars / SMPLer-X-OSX / Motion-X / named .npz readers, restricted unpickler
- estimate.py    Input B: MediaPipe Holistic landmarks -> keypoints -> fitting.py (SMPLify-X-style, batched)
- humanml3d.py   52 joints -> 623-d per frame (reference quirks as settings), recover_from_ric
- stats.py       motion-stats: corpus mean/std the HumanML3D way, streamed over shards
- render.py      motion-render: skeleton pictures (PNG / GIF / MP4)
- synthetic.py   a synthetic SMPL-X model file and motions for tests, demo and benchmark
The extractor that puts it into shards is extractors/smplx623.py.
"""
