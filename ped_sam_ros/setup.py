"""ament_python packaging of ped_sam_ros (also installable with plain pip)."""
from glob import glob

from setuptools import find_packages, setup

package_name = 'ped_sam_ros'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.launch.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.xml')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='PED-SAM developers',
    maintainer_email='ped-sam@example.com',
    description='Segment Anything for ROS 2 with the image encoder partitioned '
                'across remote ZeroMQ servers (PED-SAM).',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'edge_node = ped_sam_ros.ros.edge_node:main',
            'ped-sam-remote = remote_node.__main__:main',
            'ped-sam-keys = remote_node.keys:main',
            'ped-sam-demo = ped_sam_ros.tools.demo:main',
            'ped-sam-eval = ped_sam_ros.tools.evaluate:main',
            'ped-sam-bag-play = ped_sam_ros.tools.bag_play:main',
            'ped-sam-bag-record = ped_sam_ros.tools.bag_record:main',
            'ped-sam-make-bag = ped_sam_ros.tools.make_bag:main',
        ],
    },
)
